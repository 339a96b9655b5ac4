# ballast as a Nomad CSI plugin: one `ballast serve` per client, serving
# the CSI Controller and Node services on one socket (monolith).
#
#   nomad job run deploy/nomad/ballast-csi.nomad.hcl
#   nomad plugin status ballast
#
# The clients' docker plugin must allow privileged containers and host
# paths:
#   plugin "docker" { config { allow_privileged = true  volumes { enabled = true } } }
#
# Image: there is no public ballast image. Build one (README.md, "Use with
# Kubernetes") on every client and tag it ballast:local; a :latest tag
# would make Nomad's docker driver pull it from a registry.
#
# Volumes are node-local: see volume.hcl for creating and registering them.
job "ballast-csi" {
  type = "system"

  group "ballast" {
    task "plugin" {
      driver = "docker"

      config {
        image      = "ballast:local"
        command    = "ballast"
        args       = ["serve", "--csi-endpoint", "unix:///csi/csi.sock", "--node-id", "${node.unique.name}", "--no-docker"]
        privileged = true

        # /dev: loop devices. /var/lib/ballast: the store and the pools'
        # image files. /run/ballast: sockets and the mounts that staging
        # binds, shared with the host so they outlive this container.
        volumes = [
          "/dev:/dev",
          "/var/lib/ballast:/var/lib/ballast",
          "/run/ballast:/run/ballast:rshared",
        ]
      }

      # Nomad mounts its plugin directory at /csi (with mount propagation)
      # and passes staging and publish paths under it.
      csi_plugin {
        id        = "ballast"
        type      = "monolith"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
