from robustdeploy.cli import main

main()
