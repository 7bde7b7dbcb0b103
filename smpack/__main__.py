from smpack.entry_point import main

main()
