"""An mkdocs hook: reads the pages' lists as GitHub does (the README's text moved here as it was).

Python-Markdown starts a list only after a blank line and nests blocks in a list item only at 4
spaces; GitHub needs neither. Before rendering, a blank line goes before a list that follows a
paragraph line, and lines indented by 2 spaces inside a `- ` item are indented by 4. Fenced
code outside lists is left alone.
"""

import re

MARKER = re.compile(r'^(- |\d+\. )')


def github_lists(markdown: str) -> str:
    """`markdown` with its GitHub-style lists written as Python-Markdown reads them."""
    out: list[str] = []
    fence = False  # inside fenced code that is not in a list
    in_list = False  # since a list marker at column 0, no line at column 0 but markers
    block_start = True  # the previous line was blank (or there was none)
    block_is_list = False
    for line in markdown.split('\n'):
        if fence:
            fence = not line.startswith('```')
            out.append(line)
            continue
        if line.startswith('```'):
            fence, in_list = True, False
        if not line.strip():
            out.append(line)
            block_start = True
            continue
        marker = bool(MARKER.match(line))
        if marker and not block_start and not block_is_list:
            out.append('')  # the paragraph above ends here
        if marker:
            in_list = True
        elif not line.startswith(' '):
            in_list = False
        if block_start:  # a block inside a list item continues the list
            block_is_list = marker or (in_list and line.startswith(' '))
        elif marker:
            block_is_list = True
        block_start = False
        if in_list and re.match(r'^  [^ ]', line):
            line = '  ' + line
        out.append(line)
    return '\n'.join(out)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """The mkdocs event: every page's Markdown before it is rendered."""
    return github_lists(markdown)
