"""``python -m cloud_node``: see ``cloud_node.cli``."""

from cloud_node.cli import main

raise SystemExit(main())
