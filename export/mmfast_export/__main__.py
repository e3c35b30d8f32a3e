"""``python -m mmfast_export {data,train} ...``"""

from .cli import main

raise SystemExit(main())
