from glossrec.cli import main

main()
