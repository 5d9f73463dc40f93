import sys

from chaos import main

sys.exit(main())
