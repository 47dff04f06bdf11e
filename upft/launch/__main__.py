"""``python -m upft.launch fsdp|zero3``: print the path of a shipped accelerate config."""

import sys

from upft.launch import main

sys.exit(main())
