module batonworker/example

go 1.19

require batonworker v0.0.0

// The helper from this repository; no download.
replace batonworker => ../
