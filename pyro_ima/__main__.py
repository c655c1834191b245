"""``python -m pyro_ima`` is the ``pyro-ima`` command."""

from .cli import main

raise SystemExit(main())
