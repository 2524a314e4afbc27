import sys

from serve_app.rollout.cli import main

sys.exit(main())
