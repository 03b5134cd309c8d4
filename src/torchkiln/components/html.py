"""Render the Jinja2 templates in ``torchkiln/components/templates``: HTML reports and deployment files.

HTML templates (``*.html.j2``) are autoescaped, so user data (class names, file names, titles) passed in
the context is escaped by the template: pass plain text, never pre-escaped HTML. Every other template
(``Dockerfile.j2``, ``compose.yaml.j2``, ...) is rendered verbatim. An undefined variable is an error,
not an empty string, and a trailing newline is kept. ``trim_blocks`` and ``lstrip_blocks`` are on: a
line that holds only a ``{% ... %}`` tag leaves nothing in the output.

Example:
    >>> render("prometheus.yml.j2", name="digits", port=8000).splitlines()[-1]
    '          model: digits'
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

PACKAGE, FOLDER = "torchkiln.components", "templates"


@functools.cache
def environment(package: str | None = None) -> jinja2.Environment:
    """The template environment, built on first use: importing this module loads nothing.

    ``package``: a task family whose own ``templates`` folder is searched first (its report extends
    ``_layout.html.j2`` and imports ``_macros.html.j2`` from here).
    """
    import jinja2  # here, not at the top: jinja2 costs ~30 ms to import and only rendering needs it

    # PackageLoader works from a checkout, an editable install or a wheel.
    loaders = [jinja2.PackageLoader(p, FOLDER) for p in (package, PACKAGE) if p is not None]
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True, default=False
        ),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates are package data: they do not change while a process runs
    )


def render(template_name: str, /, *, package: str | None = None, **context: object) -> str:
    """Render the template ``template_name`` (a file in ``torchkiln/components/templates``, or in the
    ``templates`` folder of ``package``, a task family) with ``context``.

    Raises:
        jinja2.TemplateNotFound: there is no such template (a packaging bug: the templates did not ship).
        jinja2.UndefinedError: the template uses a variable that ``context`` does not define.
    """
    return environment(package).get_template(template_name).render(**context)
