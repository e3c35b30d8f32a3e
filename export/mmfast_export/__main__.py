"""``python -m mmfast_export {data,train,export,demo} ...`` (the same as ``mmfast data ...`` etc.;
see ``cli.py``)."""

from .cli import main

raise SystemExit(main())
