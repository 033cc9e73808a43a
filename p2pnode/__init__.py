# p2pnode package
