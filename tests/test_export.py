"""`vit_jax.export`: each format reloaded in its own runtime (TensorFlow, TensorFlow Lite,
`jax.export.deserialize`) gives the logits of JAX for pixels 0..255 with the model's mean and
std applied, at several batch sizes; int8 TensorFlow Lite predicts the digits test split as JAX
does; the command line; every family exports (slow)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit_jax
from vit_jax import export, tree, weights
from vit_jax.errors import ModelError
from vit_jax.train.workdir import Workdir

TOL = 1e-4
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_variables(model, seed=0):
    """Variables with every array random (a zero-initialised head would hide a wrong export)."""
    x = jnp.zeros((1, model.img_size, model.img_size, model.in_chans))
    flat = tree.flatten(jax.jit(lambda x: model.init(jax.random.key(seed), x))(x))
    rng = np.random.default_rng(seed)
    return tree.unflatten({k: np.asarray(v) + rng.normal(0, 0.05, v.shape).astype(v.dtype)
                           for k, v in flat.items()})


def pixels(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, *export.input_shape(model))).astype(np.uint8)


def expected(model, variables, x):
    return np.asarray(export.serving_function(model, variables, MEAN, STD)(jnp.asarray(x)))


def savedmodel_logits(path, x, signature):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures[signature]
    dtype = tf.uint8 if signature == 'serving_default' else tf.float32
    return next(iter(fn(pixels=tf.constant(x, dtype)).values())).numpy()


def tflite_logits(path, x, batch=None):
    """Logits of the TensorFlow Lite model at `path` for uint8 pixels `x`, `batch` images an
    invocation (all at once by default; the last invocation takes the rest)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for start in range(0, len(x), batch or len(x)):
        images = x[start:start + (batch or len(x))]
        interpreter.resize_tensor_input(inp['index'], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp['index'], images)
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out['index']))
    return np.concatenate(rows)


def stablehlo_logits(path, x):
    with open(path, 'rb') as f:
        return np.asarray(jax.export.deserialize(f.read()).call(x.astype(np.float32)))


def check_formats(model, variables, tmp_path, formats=export.FORMATS):
    """Exports `model` in `formats`; returns {format: (max abs logit difference, bytes)}."""
    serve = export.serving_function(model, variables, MEAN, STD)
    shape, out = export.input_shape(model), {}
    x = pixels(model, 4)
    want = expected(model, variables, x)
    for fmt in formats:
        path = str(tmp_path / f'model.{fmt}')
        export.export(serve, shape, fmt, path)
        if fmt == 'stablehlo':
            got = [stablehlo_logits(path, x), stablehlo_logits(path, x[:2])]
            wants = [want, want[:2]]  # the batch size is symbolic
        elif fmt == 'savedmodel':
            got = [savedmodel_logits(path, x, s) for s in ('serving_default', 'serving_float')]
            wants = [want, want]
        else:
            got = [tflite_logits(path, x), tflite_logits(path, x, batch=3)]
            wants = [want, want]  # batches of 4, then 3 and 1
        diff = max(float(np.abs(g - w).max()) for g, w in zip(got, wants, strict=True))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                   for f in fs) if os.path.isdir(path) else os.path.getsize(path)
        out[fmt] = diff, size
        # float32 round-off grows with the logits' scale (a random 50-layer BiT: |logits| ~ 1e2)
        assert diff <= TOL * max(1.0, float(np.abs(want).max())), (fmt, diff)
    return out


@pytest.fixture(scope='module')
def vit():
    model = vit_jax.create_model('ViT-Ti_16', num_classes=7, img_size=32, patch_size=8, depth=2)
    return model, random_variables(model)


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_each_format_reloads_to_the_same_logits(vit, tmp_path, fmt):
    check_formats(*vit, tmp_path, formats=(fmt,))


def test_int8_tflite_is_smaller_and_close(vit, tmp_path):
    model, variables = vit
    serve = export.serving_function(model, variables, MEAN, STD)
    for int8 in (False, True):
        export.export(serve, export.input_shape(model), 'tflite', str(tmp_path / f'{int8}'), int8)
    assert os.path.getsize(tmp_path / 'True') < 0.5 * os.path.getsize(tmp_path / 'False')
    x = pixels(model, 4, seed=1)
    got, want = tflite_logits(str(tmp_path / 'True'), x), expected(model, variables, x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_int8_tflite_agrees_with_jax_on_the_digits_test_split(trained_digits, tmp_path):
    """The trained digits model (500 steps, the `trained_digits` fixture that `test_train.py`
    shares; about 5 s beyond it) exported by the command line as float32 and int8 TensorFlow
    Lite; the trainer's own evaluation input (uint8 pixels, 360 images) in batches of 64.
    Measured: JAX 96.9 %, int8 96.9 %, top-1 agreement 100 %; 724 kB float32, 344 kB int8."""
    from vit_jax import data

    workdir, final = trained_digits
    paths = {int8: str(tmp_path / f'digits_{"int8" if int8 else "float32"}.tflite')
             for int8 in (False, True)}
    for int8, path in paths.items():
        assert export.main([f'--workdir={workdir}', '--format=tflite', f'--out={path}',
                            *(['--int8'] if int8 else [])]) == 0
    model, variables, config, _ = Workdir(str(workdir)).load_run()
    batches = list(data.create_datasets(config)[1]())
    real = np.concatenate([b['mask'] for b in batches]) > 0
    images = np.concatenate([b['image'] for b in batches])[real]
    labels = np.concatenate([b['label'] for b in batches])[real]
    assert images.dtype == np.uint8 and len(images) == 360
    want = np.asarray(model.apply(variables, data.model_inputs({'image': images},
                                                                config.pp.normalize)))
    accuracy = {'jax': float(np.mean(want.argmax(-1) == labels))}
    assert accuracy['jax'] == pytest.approx(final['accuracy'], abs=1e-6)  # the trainer's eval
    float32 = tflite_logits(paths[False], images, batch=64)
    np.testing.assert_allclose(float32, want, atol=TOL * max(1.0, float(np.abs(want).max())),
                               rtol=0)
    top1 = tflite_logits(paths[True], images, batch=64).argmax(-1)
    accuracy.update(float32=float(np.mean(float32.argmax(-1) == labels)),
                    int8=float(np.mean(top1 == labels)))
    agreement = float(np.mean(top1 == want.argmax(-1)))
    sizes = {int8: os.path.getsize(path) for int8, path in paths.items()}
    print(f'accuracy {accuracy}, int8 top-1 agreement {agreement:.4f}, '
          f'bytes float32 {sizes[False]}, int8 {sizes[True]}')
    assert agreement >= 0.98, (agreement, accuracy)
    assert sizes[True] < 0.5 * sizes[False]


def test_command_line_exports_a_weights_file(vit, tmp_path, capsys):
    model, variables = vit
    weights.save_npz(variables, tmp_path / 'w.npz')
    out = tmp_path / 'vit.stablehlo'
    assert export.main(['--model=ViT-Ti_16', f'--weights={tmp_path / "w.npz"}',
                        '--format=stablehlo', f'--out={out}']) == 2  # img_size 224 != 32 px
    assert 'error:' in capsys.readouterr().err
    small = vit_jax.create_model('ViT-Ti_16', num_classes=7)
    weights.save_npz(random_variables(small), tmp_path / 'w.npz')
    assert export.main(['--model=ViT-Ti_16', f'--weights={tmp_path / "w.npz"}',
                        '--format=stablehlo', f'--out={out}']) == 0
    x = pixels(small, 2)
    variables = weights.load(small, tmp_path / 'w.npz', strict=True)
    want = export.serving_function(small, variables, (0.5,) * 3, (0.5,) * 3)(jnp.asarray(x))
    np.testing.assert_allclose(stablehlo_logits(str(out), x), want, atol=TOL, rtol=0)


def test_bad_options_say_what_to_do(vit, tmp_path, capsys):
    model, variables = vit
    serve = export.serving_function(model, variables, MEAN, STD)
    with pytest.raises(ModelError, match='--int8 quantises TensorFlow Lite exports only'):
        export.export(serve, export.input_shape(model), 'stablehlo', str(tmp_path / 'x'), True)
    assert export.main(['--format=stablehlo', f'--out={tmp_path / "x"}']) == 2
    assert 'give --model and --weights' in capsys.readouterr().err


# One small variant per family (the hybrid too).
FAMILIES = {
    'R+ViT-Ti_16': dict(img_size=64, depth=1),
    'BiT-R50x1': dict(img_size=64),
    'swin_tiny_patch4_window7_224': dict(img_size=64, window_size=4, depths=(1, 1, 1, 1)),
    'convnext_tiny': dict(img_size=64, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    'dhvt_tiny_cifar_patch4': dict(depth=2),
    'SReT_T': dict(),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_every_family_exports(name, tmp_path):
    model = vit_jax.create_model(name, num_classes=5, **FAMILIES[name])
    results = check_formats(model, random_variables(model), tmp_path)
    print(name, {fmt: f'{diff:.1e}, {size / 1e6:.2f} MB' for fmt, (diff, size) in
                 results.items()})
