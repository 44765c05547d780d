"""Contract test mixins, one per kind of component: subclass one in a ``test_*.py`` file.

Their names do not start with ``Test``, so importing one into a test module does not
collect it on its own. Every check is a plain method (``test_*``) that raises
``AssertionError`` on a broken component, so it can also be called directly.
"""

from .backbone import BackboneContract
from .dataset import DatasetContract
from .head import HeadContract
from .localizer import LocalizerContract

__all__ = ["BackboneContract", "DatasetContract", "HeadContract", "LocalizerContract"]
