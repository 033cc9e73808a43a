# protocol package
