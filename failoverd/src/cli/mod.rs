//! The `failoverd` command line: one module per subcommand.
