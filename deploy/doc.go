// Package deploy holds the checks of the deployment files at the repository's
// root (Dockerfile, docker-compose.yml): these machines have no container
// daemon, so tests load the files with the compose-spec library and run the
// commands they give through the heed binary's flag parsing.
package deploy
