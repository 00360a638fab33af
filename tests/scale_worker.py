"""A training run for tests/test_scale.py, in a process of its own (device count, processes):

    python tests/scale_worker.py '{"workdir": ..., "overrides": [[key, value], ...], ...}'

Trains a tiny ViT on `synthetic()` data and writes the final parameters to `params_out` (an
`.npz`, from process 0); `jobs` (a list of such specs) runs several one after the other.
`coordinator`, `num_processes` and `process_id` join a multi-process
run first, as `python -m vit_jax.main --multiprocess` does.
"""

import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

OVERRIDES = [('model_name', 'testing'), ('model.patch_size', '4'), ('model.embed_dim', '16'),
             ('model.depth', '2'), ('model.num_heads', '2'), ('model.drop_rate', '0.0'),
             ('pp.crop', '8'), ('batch', '32'), ('batch_eval', '16'), ('total_steps', '6'),
             ('warmup_steps', '1'), ('optimizer', 'sgd'), ('base_lr', '0.5'),
             ('progress_every', '1'), ('eval_every', '0'), ('checkpoint_every', '0'),
             ('fsdp_min_size', '0')]
# No dropout by default: micro-batches draw other dropout masks than the whole batch would.
NUM_TRAIN, NUM_EVAL, NUM_CLASSES = 96, 37, 4  # 37 examples: a split no batch divides


def synthetic():
    """Learnable random data: images [n, 8, 8, 3], labels from a fixed linear map."""
    rng = np.random.RandomState(0)
    images = rng.randn(NUM_TRAIN + NUM_EVAL, 8, 8, 3).astype(np.float32)
    labels = (images.reshape(len(images), -1) @ rng.randn(192, NUM_CLASSES)).argmax(-1)
    labels = labels.astype(np.int32)
    return images[:NUM_TRAIN], labels[:NUM_TRAIN], images[NUM_TRAIN:], labels[NUM_TRAIN:]


def make_config(overrides=()):
    from vit_jax import config as config_lib
    config = config_lib.base_config()
    config.model = config_lib.model_config('testing')
    return config_lib.apply_overrides(config, [*OVERRIDES, *map(tuple, overrides)])


def get_config():
    """`make_config()`, for the command line: `--config=tests/scale_worker.py`."""
    return make_config()


def final_params(config, workdir):
    """The parameters of the newest checkpoint in `workdir` (and their moving average, if any),
    as flat numpy arrays."""
    import jax

    import vit_jax
    from vit_jax import config as config_lib
    from vit_jax import tree
    from vit_jax.train import optim, step
    model = vit_jax.create_model(config.model_name, **config_lib.model_overrides(config),
                                 num_classes=NUM_CLASSES, img_size=config.pp.crop)
    template = step.create_train_state(model, optim.create_optimizer(config)[0],
                                       jax.random.PRNGKey(0), (1, 8, 8, 3),
                                       ema=config.ema_decay > 0)
    from vit_jax.train.workdir import Workdir

    ckpt = Workdir(workdir).checkpointer(every=0, keep=10)
    state, _ = ckpt.restore(template, config.model_name)
    ckpt.close()
    flat = tree.flatten({'params': state.params})
    if state.ema:  # the moving average too, as 'ema/<name>'
        flat.update({f'ema/{k}': v for k, v in tree.flatten(state.ema).items()})
    return {k: np.asarray(v) for k, v in flat.items()}


def main(spec):
    if spec.get('coordinator'):
        from vit_jax.train import sharding
        sharding.initialize_processes(spec['coordinator'], spec['num_processes'],
                                      spec['process_id'])
    for job in spec.get('jobs', [spec]):
        run(job)


def run(spec):
    """One training run (resumed from `workdir`'s checkpoints, if any)."""
    import jax

    from vit_jax.data.arrays import array_datasets
    from vit_jax.train.loop import train
    config = make_config(spec.get('overrides', ()))
    result = train(config, spec['workdir'],
                   datasets=array_datasets(*synthetic(), num_classes=NUM_CLASSES))
    print('RESULT ' + json.dumps(result), flush=True)
    if spec.get('params_out') and 'preempted_at_step' not in result:
        params = final_params(config, spec['workdir'])
        if jax.process_index() == 0:
            np.savez(spec['params_out'], **params)


if __name__ == '__main__':
    main(json.loads(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)  # as the CLI: skip interpreter teardown
