c = get_config()  # noqa: F821 (stand-in config)
