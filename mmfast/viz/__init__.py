"""Pictures of what the models do (needs matplotlib: ``pip install 'mmfast[viz]'``).

- :func:`attention_grid`: a caption's words, each with where the model looked;
- :func:`answer_figure`: VQA answers with the question-guided attention (own models);
- :func:`contact_sheet`: a search query and its top-k images with their scores;
- :func:`save`: write any of them (PNG by default; the suffix picks the format).

Importing this module does not import matplotlib; drawing does (ImportError naming the
extra when it is missing). The numeric half (attention rows -> heat-maps on the image) is
:mod:`mmfast.attention_map`, numpy only.
"""

from ._figure import INSTALL_HINT, save
from .attention import answer_figure, attention_grid, overlay
from .contact_sheet import contact_sheet

__all__ = ["INSTALL_HINT", "answer_figure", "attention_grid", "contact_sheet", "overlay", "save"]
