"""`python -m tf_mistral.cli ...`: the `tf-mistral` command."""

import sys

from tf_mistral.cli import main

sys.exit(main())
