module batonworker

go 1.19
