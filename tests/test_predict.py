"""The predict command: ImageNet class names, the model's own preprocessing, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import vit_jax
from vit_jax import predict, weights


def test_top5_uses_the_weights_head_and_imagenet_names(tmp_path, capsys):
    model = vit_jax.create_model('testing', img_size=32)
    variables = jax.tree.map(np.array, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    variables['params']['head']['bias'][[281, 285, 1]] = [9.0, 8.0, 7.0]
    weights.save_npz(variables, tmp_path / 'w.npz')
    image = tmp_path / 'photo.jpg'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8)).save(image)

    assert predict.main(['--model=testing', f'--weights={tmp_path / "w.npz"}', '--img_size=32',
                         str(image)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'{image}:'
    assert lines[1].startswith('  1. tabby, tabby cat (')
    assert lines[2].startswith('  2. Egyptian cat (')
    assert lines[3].startswith('  3. goldfish, Carassius auratus (')
    assert len(lines) == 6


def test_preprocess_resizes_crops_and_normalises_as_the_model_expects(tmp_path):
    path = tmp_path / 'wide.png'
    pixels = np.zeros((60, 90, 3), np.uint8)
    pixels[:, 45:] = 255  # right half white
    Image.fromarray(pixels).save(path)
    cfg = {'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': (0.5, 0.25, 0.5),
           'std': (0.5, 0.25, 0.25)}
    x = predict.preprocess(str(path), cfg, 28)  # shorter side 60 -> 32, centre crop 28
    assert x.shape == (28, 28, 3)
    np.testing.assert_allclose(x[:, 0], [[-1.0, -1.0, -2.0]] * 28, atol=1e-6)
    np.testing.assert_allclose(x[:, -1], [[1.0, 3.0, 2.0]] * 28, atol=1e-6)


def test_errors_are_one_line(tmp_path, capsys):
    model = vit_jax.create_model('testing', img_size=32, num_classes=0)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    weights.save_npz(variables, tmp_path / 'features.npz')
    image = tmp_path / 'x.png'
    image.write_text('not an image')
    assert predict.main(['--model=testing', f'--weights={tmp_path / "features.npz"}',
                         str(image)]) == 2
    assert 'has no classifier head' in capsys.readouterr().err
    assert predict.main(['--workdir', str(tmp_path), str(image)]) == 2
    assert 'holds no config.json; is it the --workdir of a run?' in capsys.readouterr().err


def test_images_decode_as_in_training_16_bit_png_included(tmp_path):
    # Issue 14, point 8: PIL clips 16-bit gray to 255 when converting; training keeps the
    # high byte (tf.io.decode_image). 8-bit and 16-bit, gray and RGB PNGs, all equal.
    import tensorflow as tf

    ramp = np.arange(40 * 48).reshape(40, 48)
    arrays = {'gray16.png': (ramp * 34).astype(np.uint16), 'gray8.png': (ramp % 256).astype(
        np.uint8), 'rgb16.png': np.stack([ramp * 34, ramp * 20, ramp * 9], -1).astype(np.uint16),
        'rgb8.png': np.stack([ramp % 256] * 3, -1).astype(np.uint8)}
    for name, array in arrays.items():
        path = str(tmp_path / name)
        tf.io.write_file(path, tf.io.encode_png(array[..., None] if array.ndim == 2 else array))
        expected = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                      expand_animations=False).numpy()
        np.testing.assert_array_equal(predict.read_image(path), expected, err_msg=name)
    assert predict.read_image(str(tmp_path / 'gray16.png')).max() == (ramp.max() * 34) >> 8


def test_a_hugging_face_directory_predicts_as_its_model(tmp_path, capsys):
    """`--weights=DIRECTORY` (a `save_pretrained` directory) needs no --model: the top class
    is the one the saved model predicts."""
    from vit_jax import inference

    model = vit_jax.create_model('ViT-Ti_16', num_classes=4, img_size=32, patch_size=8, depth=2)
    variables = jax.tree.map(np.array, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    variables['params']['head']['bias'][2] = 9.0
    weights.save_hf(model, variables, tmp_path / 'hf')
    loaded = inference.load(weights_source=str(tmp_path / 'hf'))
    assert loaded.name is None and loaded.model.num_classes == 4
    image = tmp_path / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(image)
    assert predict.main([f'--weights={tmp_path / "hf"}', str(image)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith('  1. class 2 (')
