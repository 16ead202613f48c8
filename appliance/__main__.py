"""``python -m appliance ARGS``: the same as the ``appliance`` command (``appliance.cli.main``)."""

import sys

from appliance.cli.main import main

sys.exit(main())
