// Package e2e drives the redlease dashboard in headless Chromium against
// a real redis-server. It is a module of its own so that chromedp stays
// out of the library's go.mod: run it with
//
//	cd e2e && go test ./...
//
// It skips when chromium or redis-server is missing, and fails instead
// under CI=true. REDLEASE_SCREENSHOT_DIR names where the screenshots go.
package e2e
