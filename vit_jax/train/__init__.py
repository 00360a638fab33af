"""Training: the trainer's config keys (`config_keys`), pure steps (`step`), optimizers
(`optim`), mesh placement (`sharding`), checkpoints (`checkpoint`), metric output (`metrics`),
the run's setup (`setup`) and the loop (`loop.train`). Import each module by its name;
`vit_jax.train.step` needs neither ml_collections nor TensorFlow.
"""
