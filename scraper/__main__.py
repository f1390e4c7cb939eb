"""``python -m shoeclass_scraper ...``."""
import sys

from .cli import main

sys.exit(main())
