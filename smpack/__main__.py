from smpack.cli.commands import main

main()
