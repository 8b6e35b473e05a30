"""MkDocs hooks (mkdocs.yml): what the site takes from the code rather than from a page.

- the config reference's tables come from the endpoint config's models
  (:mod:`faas.endpoint.config_reference`), so they cannot drift from the code;
- the benchmarks' figures are served from ``benchmarks/``, where the scripts write them.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

from faas.endpoint import config_reference

MARKER = "<!-- config-reference -->"
ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["benchmarks/fleet_saturation.png"]  # linked by benchmarks/README.md, included in benchmarks.md


def on_files(files, config):
    for figure in FIGURES:
        files.append(File(Path(figure).name, str(ROOT / Path(figure).parent), config["site_dir"],
                          config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, config_reference.markdown())
    return markdown
