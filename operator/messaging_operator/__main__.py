"""`python -m messaging_operator`: the operator without the `messaging` console script."""

from messaging_operator.run import main

raise SystemExit(main())
