"""`spot publish DIR`: the static economics site (index.html, method.html, data.json).

``figures.gather`` runs the cost report for the trailing week and the last 90 days; ``site.write``
renders the pages (Jinja2 templates in ``templates/``, the chart as inline SVG from ``chart``) and
writes them atomically; ``serve.serve`` shows a directory over local HTTP. Nothing here prints.
"""

from .figures import SCHEMA_VERSION, Figures, gather
from .site import write

__all__ = ["SCHEMA_VERSION", "Figures", "gather", "write"]
