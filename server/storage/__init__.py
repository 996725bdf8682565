"""Everything the relay keeps in its database: engine and migrations, tables, and stores."""
