"""Published weights on the command line: list the catalogue, or fetch files into the cache.

    python -m vit_jax.hub --list                       # name, model, classes, image size, source
    python -m vit_jax.hub --fetch ViT-B_16 gs://b/w.npz  # download (once), print the local paths

`--fetch` fills the cache (`$VIT_JAX_CACHE`, default ~/.cache/vit_jax) of a machine with network
access; a copy of that folder serves a machine without. In Python: `vit_jax.pretrained(NAME)`.
"""

from __future__ import annotations

import sys

from vit_jax import catalogue, cli
from vit_jax.errors import VitJaxError


def main(argv: list[str] | None = None) -> int:
    """Lists or fetches published weights (the CLI); returns the exit status."""
    parser = cli.make_parser('vit_jax.hub', __doc__)
    parser.add_argument('--list', action='store_true', help='print the catalogue')
    parser.add_argument('--fetch', nargs='+', default=[], metavar='NAME_OR_URL',
                        help='download into the cache (if not there) and print the local paths')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.list or args.fetch):
        parser.error('give --list, or --fetch NAME_OR_URL ...')
    if args.list:
        print(catalogue.table())
    try:
        for source in args.fetch:
            print(catalogue.resolve(source))
    except VitJaxError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
