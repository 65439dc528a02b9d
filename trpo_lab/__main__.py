from trpo_lab.app import main

main()
