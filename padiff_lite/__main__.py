"""``python -m padiff_lite``. Python puts the working folder first on ``sys.path`` for ``-m``; it is moved to the
end before anything else is imported, so a file there (``six.py``, ``cv2.py``...) cannot shadow a library that
torch or paddle imports. ``MODULE:CALLABLE`` factories in the working folder still import."""
import os
import sys

_cwd = os.getcwd()
sys.path[:] = [p for p in sys.path if p not in ("", ".", _cwd)] + [_cwd]

from .cli import main  # noqa: E402

sys.exit(main())
