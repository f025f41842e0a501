from itkm_lightning.cli import main

main()
