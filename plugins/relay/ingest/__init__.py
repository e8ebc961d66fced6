"""Landing raw order batches and validating them (Great Expectations) before anything reads them."""
