r"""Command line: a model with its weights as a file that runs without JAX (or without Python).

    python -m vit_jax.export --model=ViT-B_16 --weights=ViT-B_16.npz --format=savedmodel --out=vit
    python -m vit_jax.export --workdir=runs/digits --format=tflite --int8 --out=digits.tflite
    python -m vit_jax.export --weights=hf_dir --format=stablehlo --out=vit.stablehlo

Every format takes pixels 0..255 `[batch, img_size, img_size, channels]` (already resized and
cropped to the model's input size) and applies the model's mean and std itself; it returns
logits `[batch, num_classes]`.
- `savedmodel` (TensorFlow, through jax2tf): signature `serving_default` takes uint8 pixels,
  `serving_float` float32 ones; any batch size.
- `tflite` (TensorFlow Lite from the same converted function): uint8 pixels, any batch size
  (`interpreter.resize_tensor_input`); `--int8` quantises the weights to int8 (dynamic range).
- `stablehlo` (`jax.export`, serialised): float32 pixels, any batch size; read back with
  `jax.export.deserialize(open(path, 'rb').read()).call(pixels)`.
`--weights` takes any file `vit_jax.weights.load` reads with `--model`, or a Hugging Face
directory alone (its `config.json` picks the model).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from vit_jax import cli, inference, storage
from vit_jax.errors import ModelError, VitJaxError
from vit_jax.normalization import normalize

FORMATS = ('savedmodel', 'tflite', 'stablehlo')
Serve = Callable[[jax.Array], jax.Array]


def serving_function(model: Any, variables: Mapping[str, Any], mean: Sequence[float],
                     std: Sequence[float]) -> Serve:
    """Pixels 0..255 `[batch, size, size, channels]` (any dtype) -> logits, eval mode."""
    def serve(pixels: jax.Array) -> jax.Array:
        x = normalize(pixels.astype(jnp.float32), tuple(mean), tuple(std))
        return model.apply(variables, x, train=False)
    return serve


def input_shape(model: Any) -> tuple[int, int, int]:
    """`(height, width, channels)` of the model's input."""
    return model.img_size, model.img_size, model.in_chans


def to_stablehlo(serve: Serve, shape: tuple[int, int, int], path: str | os.PathLike) -> None:
    """Writes `serve` as serialised StableHLO (`jax.export`) with a symbolic batch size."""
    batch, = jax.export.symbolic_shape('batch')
    spec = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    exported = jax.export.export(jax.jit(serve))(spec)
    _write(path, exported.serialize())


def _tf_function(serve: Serve) -> Any:
    """`serve` converted by jax2tf with a symbolic batch size, as a `tf.function`."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(serve, polymorphic_shapes=['(b, ...)'], with_gradient=False)
    return tf.function(converted, autograph=False)


def to_savedmodel(serve: Serve, shape: tuple[int, int, int], path: str | os.PathLike) -> None:
    """Writes a TensorFlow SavedModel with signatures for uint8 (`serving_default`) and float32
    (`serving_float`) pixels, any batch size. In a bucket: written to a local temporary folder,
    then uploaded (TensorFlow's gfile ignores emulators), `saved_model.pb` last."""
    import tensorflow as tf

    if storage.is_remote(path):
        with tempfile.TemporaryDirectory() as local:
            to_savedmodel(serve, shape, local)
            with storage.reporting(f'cannot write {os.fspath(path)}', path, '--out'):
                storage.upload_tree(local, storage.path(path), last='saved_model.pb')
        return

    module = tf.Module()
    module.serve = _tf_function(serve)
    signatures = {
        name: module.serve.get_concrete_function(tf.TensorSpec((None, *shape), dtype,
                                                               name='pixels'))
        for name, dtype in (('serving_default', tf.uint8), ('serving_float', tf.float32))}
    tf.saved_model.save(module, path, signatures=signatures)


def to_tflite(serve: Serve, shape: tuple[int, int, int], path: str | os.PathLike,
              int8: bool = False) -> None:
    """Writes TensorFlow Lite float32 (or, with `int8`, dynamic-range int8 weights) taking
    uint8 pixels, any batch size: the input is `[1, *shape]` until
    `interpreter.resize_tensor_input(index, [batch, *shape])`."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = _tf_function(serve)
    concrete = module.serve.get_concrete_function(tf.TensorSpec((None, *shape), tf.uint8,
                                                                name='pixels'))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    _write(path, converter.convert())


def export(serve: Serve, shape: tuple[int, int, int], fmt: str, path: str | os.PathLike,
           int8: bool = False) -> None:
    """Writes `serve` (`serving_function`) in format `fmt` (one of `FORMATS`) to `path` (a
    local path, `gs://...` or `s3://...`)."""
    if fmt not in FORMATS:
        raise ModelError(f'--format={fmt!r} is not supported; choose one of {FORMATS}')
    if int8 and fmt != 'tflite':
        raise ModelError('--int8 quantises TensorFlow Lite exports only; add --format=tflite')
    if fmt == 'stablehlo':
        to_stablehlo(serve, shape, path)
    elif fmt == 'savedmodel':
        to_savedmodel(serve, shape, path)
    else:
        to_tflite(serve, shape, path, int8)


def _write(path: str | os.PathLike, data: bytes) -> None:
    target = storage.path(path)
    with storage.reporting(f'cannot write {os.fspath(path)}', path, '--out'):
        if not storage.is_remote(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        storage.write_atomic(target, data)


def main(argv: list[str] | None = None) -> int:
    """Exports a model to `--format` at `--out` (the CLI); returns the exit status."""
    parser = cli.make_parser('vit_jax.export', __doc__)
    parser.add_argument('--model', help='registered model name, e.g. ViT-B_16 (with a weights '
                        'file or URL)')
    parser.add_argument('--weights', help='weights file or URL with --model; a Hugging Face '
                        'directory; or a published name (python -m vit_jax.hub --list)')
    parser.add_argument('--workdir', help='a training run of vit_jax.main')
    parser.add_argument('--format', required=True, choices=FORMATS)
    parser.add_argument('--int8', action='store_true', help='tflite: int8 weights')
    parser.add_argument('--out', required=True, help='file (tflite, stablehlo) or directory')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        storage.path(args.out)  # an unknown scheme fails before the model loads
        loaded = inference.load(workdir=args.workdir, weights_source=args.weights,
                                model=args.model)
        model, cfg = loaded.model, loaded.preprocessing
        serve = serving_function(model, loaded.variables, cfg['mean'], cfg['std'])
        export(serve, input_shape(model), args.format, args.out, args.int8)
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {args.out} ({args.format}{", int8" if args.int8 else ""}) for '
          f'{type(model).__name__}, input {input_shape(model)} pixels 0..255')
    return 0


if __name__ == '__main__':
    sys.exit(main())
