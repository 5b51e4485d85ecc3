"""MkDocs hook (mkdocs.yml ``hooks:``): the docstrings cross-reference in Sphinx's roles
(``:func:`make```), which the API pages would print as ``:func:make``; keep the code, drop the role."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|meth|class|attr|mod|data|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub("", html)
