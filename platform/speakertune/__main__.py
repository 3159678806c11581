from speakertune.cli import main

raise SystemExit(main())
