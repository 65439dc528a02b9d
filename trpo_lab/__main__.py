from trpo_lab.cli import main

main()
