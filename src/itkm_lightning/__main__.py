from itkm_lightning.command import main

main()
