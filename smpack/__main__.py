from smpack.cli import main

main()
