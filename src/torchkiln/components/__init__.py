"""Components: the building blocks of torchkiln's generated text, rendered from Jinja2 templates.

:mod:`torchkiln.components.html` renders the templates in ``templates/`` (HTML reports, and the
Dockerfile, compose and README files that ``kiln containerize`` writes); they ship in the wheel as
package data.
"""
