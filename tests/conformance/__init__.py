"""SDK-level conformance suite: the same tests against the local server and a real lakeFS."""
