"""Published weights by name (`vit_jax.catalogue`, `vit_jax.pretrained`) and the download cache
(`vit_jax.download`), against a local HTTP server posing as the source: each file is downloaded
once, read from the cache after (no request, also with the source down), re-downloaded when the
cached copy is damaged, refused when it does not match a pinned sha256; every failure is one line.
"""

import collections
import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import types

import jax
import numpy as np
import pytest

import vit_jax
from vit_jax import catalogue, download, hub, storage, weights
from vit_jax.catalogue import Published
from vit_jax.errors import ModelError, StorageError
from vit_jax.train import loop

NAME = 'test/tiny'


@dataclasses.dataclass
class Served:
    """A file the source serves: `length` overrides Content-Length (to cut a download short),
    `delay` seconds pass before the answer."""

    body: bytes
    content_type: str = 'application/octet-stream'
    length: int | None = None
    delay: float = 0.0


class Source:
    """A threaded HTTP server on 127.0.0.1 serving `files` (path -> `Served`), counting the
    requests per path."""

    def __init__(self):
        self.files: dict[str, Served] = {}
        self.requests: collections.Counter = collections.Counter()
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- the name http.server calls
                path = self.path.lstrip('/')
                source.requests[path] += 1
                served = source.files.get(path)
                if served is None:
                    self.send_error(404)
                    return
                time.sleep(served.delay)
                self.send_response(200)
                self.send_header('Content-Type', served.content_type)
                self.send_header('Content-Length', str(served.length or len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}/{path}'

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache folder for each test (`VIT_JAX_CACHE`)."""
    monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


@pytest.fixture
def source():
    server = Source()
    yield server
    server.stop()


def tiny_model(**overrides):
    return vit_jax.create_model('testing', **{'num_classes': 5, 'img_size': 32, **overrides})


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """`(path, variables)` of a real weights file of the 'testing' model (5 classes, 32 px)."""
    model = tiny_model()
    variables = jax.jit(lambda: model.init(jax.random.key(1), np.zeros((1, 32, 32, 3))))()
    path = tmp_path_factory.mktemp('tiny') / 'tiny.npz'
    weights.save_npz(variables, path)
    return path, variables


@pytest.fixture
def published(tiny, source, monkeypatch):
    """The tiny weights served by `source` and published as `NAME`."""
    source.files['tiny.npz'] = Served(tiny[0].read_bytes())
    entry = Published(NAME, source.url('tiny.npz'), 'testing', 5, 32)
    monkeypatch.setitem(catalogue.CATALOGUE, NAME, entry)
    return entry


def assert_same(a, b):
    flat_a, flat_b = (jax.tree_util.tree_leaves_with_path(v) for v in (a, b))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def cached_file(entry: Published) -> str:
    return download.cache_path(entry.url, entry.filename)


# ----------------------------------------------------------------------------- by name


def test_a_name_downloads_once_then_loads_from_the_cache(tiny, published, source):
    model, variables = vit_jax.pretrained(NAME)
    assert (model.num_classes, model.img_size) == (5, 32)
    assert_same(variables, tiny[1])
    assert source.requests['tiny.npz'] == 1
    assert_same(weights.load(tiny_model(), NAME), tiny[1])  # the cache: no second request
    assert_same(vit_jax.pretrained(NAME)[1], tiny[1])
    assert source.requests['tiny.npz'] == 1
    record = json.loads(open(cached_file(published) + '.json').read())
    assert record == {'url': published.url, 'size': tiny[0].stat().st_size,
                      'sha256': hashlib.sha256(tiny[0].read_bytes()).hexdigest()}


def test_a_model_name_loads_its_default_weights_and_overrides_start_a_fresh_head(tiny, published):
    model, variables = vit_jax.pretrained('testing')  # its only (so first) entry
    assert_same(variables, tiny[1])
    model, variables = vit_jax.pretrained(NAME, num_classes=3)
    assert variables['params']['head']['kernel'].shape == (10, 3)
    assert_same(variables['params']['Transformer'], tiny[1]['params']['Transformer'])


def test_a_warm_cache_works_with_the_source_down(tiny, published, source):
    vit_jax.pretrained(NAME)
    source.stop()
    assert_same(vit_jax.pretrained(NAME)[1], tiny[1])


@pytest.mark.parametrize('damage', ['flip', 'truncate'])
def test_a_damaged_cache_file_is_detected_and_downloaded_again(tiny, published, source, damage,
                                                               caplog):
    vit_jax.pretrained(NAME)
    path = cached_file(published)
    data = bytearray(open(path, 'rb').read())
    if damage == 'flip':
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:len(data) // 2]
    open(path, 'wb').write(data)
    assert_same(vit_jax.pretrained(NAME)[1], tiny[1])
    assert source.requests['tiny.npz'] == 2
    assert f'{path}: its' in caplog.text and 'downloading it again' in caplog.text
    source.stop()  # damaged again, and the source gone: one line naming both
    open(path, 'wb').write(data)
    with pytest.raises(StorageError, match=f'cannot download {published.url} .*; the copy cached '
                                           f'at {path} is damaged'):
        vit_jax.pretrained(NAME)


def test_a_cold_cache_with_the_source_down_is_one_line_naming_url_and_cache(published, source):
    source.stop()
    path = cached_file(published)
    message = (f'^cannot download {published.url} \\(the source is unreachable: .*\\); nothing is '
               f'cached at {path}: check the network .*, or put the file there by hand$')
    with pytest.raises(StorageError, match=message):
        vit_jax.pretrained(NAME)
    assert os.listdir(os.path.dirname(path)) == ['.lock']  # nothing half-written is left


def test_a_file_put_in_the_cache_by_hand_is_adopted(tiny, published, source):
    source.stop()
    path = cached_file(published)
    os.makedirs(os.path.dirname(path))
    shutil.copy(tiny[0], path)
    assert_same(vit_jax.pretrained(NAME)[1], tiny[1])
    assert json.loads(open(path + '.json').read())['size'] == tiny[0].stat().st_size


def test_a_pinned_sha256_is_checked(tiny, published, source, monkeypatch):
    digest = hashlib.sha256(tiny[0].read_bytes()).hexdigest()
    monkeypatch.setitem(catalogue.CATALOGUE, NAME, dataclasses.replace(published, sha256='0' * 64))
    with pytest.raises(StorageError, match=f'^{published.url}: the download has sha256 {digest}, '
                                           f'not the published 0{{64}}; it was not kept'):
        vit_jax.pretrained(NAME)
    assert not os.path.exists(cached_file(published))
    assert os.listdir(os.path.dirname(cached_file(published))) == ['.lock']
    monkeypatch.setitem(catalogue.CATALOGUE, NAME, dataclasses.replace(published, sha256=digest))
    assert_same(vit_jax.pretrained(NAME)[1], tiny[1])


def test_training_starts_from_a_published_name(load_config, source, monkeypatch, tmp_path):
    """`--config.pretrained=NAME`: the trainer's fresh state holds the published weights, but for
    the head, which starts afresh."""
    model = vit_jax.create_model('ViT-digits', num_classes=10)
    variables = jax.jit(lambda: model.init(jax.random.key(3), np.zeros((1, 16, 16, 3))))()
    weights.save_npz(variables, tmp_path / 'digits.npz')
    source.files['digits.npz'] = Served((tmp_path / 'digits.npz').read_bytes())
    monkeypatch.setitem(catalogue.CATALOGUE, 'test/digits',
                        Published('test/digits', source.url('digits.npz'), 'ViT-digits', 10, 16))
    config = load_config('digits.py', ('pretrained', 'test/digits'))
    run = loop.setup(config, 10, loop.make_mesh(config))
    no_checkpoint = types.SimpleNamespace(latest_step=lambda: None)
    state, _, note = loop.restore_or_init(config, run, no_checkpoint)
    assert note == 'Starting from the weights in test/digits.'
    assert_same(state.params['Transformer'], variables['params']['Transformer'])
    assert source.requests['digits.npz'] == 1


# ----------------------------------------------------------------------------- by URL


def test_weights_from_an_http_url_equal_the_local_file(tiny, source):
    source.files['w/tiny.npz'] = Served(tiny[0].read_bytes())
    assert_same(weights.load(tiny_model(), source.url('w/tiny.npz')),
                weights.load(tiny_model(), tiny[0]))


@pytest.mark.parametrize('store', ['gcs_env', 's3_env'])
def test_weights_from_a_bucket_equal_the_local_file_and_follow_its_changes(tiny, store, request,
                                                                          tmp_path, caplog):
    """`weights.load(model, 'gs://...' | 's3://...')` against the GCS emulator and moto's S3:
    equal to the local file; a rewritten object is downloaded again."""
    emulator = request.getfixturevalue(store)
    url = f'{emulator.bucket()}/run/weights.npz'
    storage.path(url).write_bytes(tiny[0].read_bytes())
    assert_same(weights.load(tiny_model(), url), weights.load(tiny_model(), tiny[0]))
    model = tiny_model()
    newer = jax.jit(lambda: model.init(jax.random.key(2), np.zeros((1, 32, 32, 3))))()
    weights.save_npz(newer, tmp_path / 'newer.npz')
    storage.path(url).write_bytes((tmp_path / 'newer.npz').read_bytes())
    assert_same(weights.load(model, url), newer)
    assert 'the source changed since it was downloaded' in caplog.text


@pytest.mark.slow  # gcsfs retries for about 30 s before it gives up
def test_a_bucket_out_of_reach_leaves_the_cached_copy_in_use(tiny, gcs_env, caplog):
    url = f'{gcs_env.bucket()}/run/weights.npz'
    storage.path(url).write_bytes(tiny[0].read_bytes())
    weights.load(tiny_model(), url)
    gcs_env.stop()
    assert_same(weights.load(tiny_model(), url), tiny[1])
    assert f'cannot ask {url} for its version' in caplog.text


def test_public_gs_without_gcsfs_reads_the_https_endpoint(tiny, source, monkeypatch):
    source.files['vit_models/tiny.npz'] = Served(tiny[0].read_bytes())
    monkeypatch.setattr(download, 'GCS_PUBLIC', source.url('').rstrip('/'))
    monkeypatch.setattr(download, 'gcsfs_installed', lambda: False)
    assert_same(weights.load(tiny_model(), 'gs://vit_models/tiny.npz'), tiny[1])
    assert download.cache_path('gs://vit_models/tiny.npz').endswith('/tiny.npz')


def test_two_processes_fetching_one_url_download_it_once(tiny, source, cache):
    source.files['slow.npz'] = Served(tiny[0].read_bytes(), delay=2.0)
    code = 'import sys; from vit_jax import download; print(download.fetch(sys.argv[1]))'
    env = {**os.environ, 'VIT_JAX_CACHE': str(cache), 'JAX_PLATFORMS': 'cpu'}
    runs = [subprocess.Popen([sys.executable, '-c', code, source.url('slow.npz')], env=env,
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = {run.communicate(timeout=120)[0].strip() for run in runs}
    assert [run.returncode for run in runs] == [0, 0]
    assert paths == {download.cache_path(source.url('slow.npz'))}
    assert open(paths.pop(), 'rb').read() == tiny[0].read_bytes()
    assert source.requests['slow.npz'] == 1


# ----------------------------------------------------------------------------- bad input


def test_an_unknown_name_is_one_line_with_close_matches():
    with pytest.raises(ModelError, match=r"^no published weights named 'imagenet21k/ViT-B_61'; "
                                         r'did you mean imagenet21k/ViT-B_16.*\? python -m '
                                         r'vit_jax.hub --list prints them$'):
        vit_jax.pretrained('imagenet21k/ViT-B_61')
    with pytest.raises(ModelError, match=r"^'imagenet21k/ViT-B_61' is neither a file nor a "
                                         r'published checkpoint; did you mean'):
        weights.load(tiny_model(), 'imagenet21k/ViT-B_61')
    with pytest.raises(ModelError, match="model 'dhvt_tiny_cifar_patch4' has no published"):
        vit_jax.pretrained('dhvt_tiny_cifar_patch4')
    with pytest.raises(ModelError, match=r"create_model builds the module alone .*; model, "
                                         r"variables = vit_jax.pretrained\('ViT-B_16'\)"):
        vit_jax.create_model('ViT-B_16', pretrained=True)


def test_an_unknown_scheme_is_one_line():
    with pytest.raises(StorageError, match=r'^ftp://host/w.npz: unknown scheme ftp://; weights '
                                           r'come from a local path, a published name'):
        weights.load(tiny_model(), 'ftp://host/w.npz')


def test_http_404_is_one_line(source, cache):
    url = source.url('nope.npz')
    with pytest.raises(StorageError, match=f'^cannot download {url} \\(HTTP 404 Not Found\\); '
                                           f'nothing is cached at .*: check the URL'):
        weights.load(tiny_model(), url)


def test_a_download_cut_short_is_not_kept(tiny, source):
    data = tiny[0].read_bytes()
    source.files['cut.npz'] = Served(data[:1000], length=len(data))
    url = source.url('cut.npz')
    with pytest.raises(StorageError, match=f'^cannot download {url} \\(the download broke off'):
        weights.load(tiny_model(), url)
    assert not os.path.exists(download.cache_path(url))


def test_a_web_page_instead_of_weights_is_refused(source):
    source.files['drive'] = Served(b'<html>confirm</html>', content_type='text/html')
    with pytest.raises(StorageError, match=r'the server sent a web page, not the file .*: '
                                           r'download it in a browser, or put the file there'):
        download.fetch(source.url('drive'), filename='w.pth')


def test_an_unwritable_cache_is_one_line(tiny, source, cache, monkeypatch):
    source.files['tiny.npz'] = Served(tiny[0].read_bytes())
    cache.mkdir()
    cache.chmod(0o500)
    if os.access(cache, os.W_OK):
        pytest.skip('running as root: permissions do not stop writes')
    with pytest.raises(StorageError, match=r'^cannot write the cache file .* \(Permission denied\)'
                                           r': .*, or set VIT_JAX_CACHE to another folder$'):
        download.fetch(source.url('tiny.npz'))


# ----------------------------------------------------------------------------- the catalogue


def test_every_entry_loads_into_a_registered_model():
    for entry in catalogue.CATALOGUE.values():
        model = vit_jax.create_model(entry.model, num_classes=entry.num_classes,
                                     img_size=entry.img_size, **entry.options)
        assert model.num_classes > 0, entry
        assert entry.url.split('://')[0] in ('gs', 'https'), entry
        assert os.path.splitext(download.cache_path(entry.url, entry.filename))[1] in (
            '.npz', '.pth', '.safetensors'), entry
    assert len(catalogue.CATALOGUE) == len(list(catalogue._entries()))  # no name twice


def test_defaults_are_the_tags_the_registry_names():
    """A model's default is its first entry; Swin's and ConvNeXt's are timm's default tags."""
    for name in vit_jax.list_models():
        tag = vit_jax.models.get_spec(name).pretrained_cfg.get('tag')
        if tag:
            assert catalogue.find(name).name == f'{name}.{tag}'
    assert catalogue.find('ViT-B_16').url.endswith('imagenet2012-steps_20k-lr_0.01-res_224.npz')
    assert catalogue.find('swin_base_patch4_window12_384').img_size == 384


def test_the_cli_lists_and_fetches(tiny, published, capsys):
    assert hub.main(['--list']) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if 'imagenet21k/ViT-B_16 ' in x)
    assert line.split() == ['imagenet21k/ViT-B_16', 'ViT-B_16', '21843', '224',
                            'gs://vit_models/imagenet21k/ViT-B_16.npz']
    assert hub.main(['--fetch', NAME]) == 0
    assert capsys.readouterr().out.strip() == cached_file(published)
    assert hub.main(['--fetch', 'ftp://x/y.npz']) == 2
    assert capsys.readouterr().err.startswith('error: ftp://x/y.npz: unknown scheme')


def test_every_cli_takes_a_published_name(tiny, published, tmp_path, capsys):
    """`inference.load` (what predict, export, analysis and fewshot share) reads a published
    name as the model and weights it names; a weights file without --model says what to add."""
    from PIL import Image

    from vit_jax import export, inference, predict
    from vit_jax.analysis import run as analysis

    loaded = inference.load(weights_source=NAME)
    assert (loaded.name, loaded.model.num_classes, loaded.model.img_size) == ('testing', 5, 32)
    assert_same(loaded.variables, tiny[1])
    image = tmp_path / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(image)
    assert predict.main([f'--weights={NAME}', str(image)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith('  1. class ')
    assert export.main([f'--weights={NAME}', '--format=stablehlo',
                        f'--out={tmp_path / "model"}']) == 0
    assert analysis.main([f'--weights={NAME}', '--images', str(image),
                          '--out', str(tmp_path / 'analysis')]) == 0
    with pytest.raises(ModelError, match=r'tiny.npz is a weights file: give --model=NAME'):
        inference.load(weights_source=str(tiny[0]))
