"""`python -m crm_mcp` is the `crm-mcp` command."""

from crm_mcp.cli import main

if __name__ == "__main__":
    main()
