# ballast as a Nomad CSI plugin: one `ballast serve` per client, serving
# the CSI Controller and Node services on one socket (monolith), every one
# joined to the same etcd.
#
#   nomad job run -var store=etcd://10.0.0.5:2379 deploy/nomad/ballast-csi.nomad.hcl
#   nomad plugin status ballast
#
# Each client's ballast is a node of one ballast cluster (its node id is
# the client's name, also its CSI topology segment topology.ballast/node),
# and the Controller service of any of them serves the whole cluster:
# CreateVolume is placed by the volume's topology_request (the required
# nodes only, the preferred first; without one, the node with the most
# room), DeleteVolume and ControllerExpandVolume are carried out by the
# volume's node, ListVolumes lists every node's. So Nomad may send
# controller calls to the plugin on any client. The node calls go to the
# client that has the volume, where Nomad places the jobs using it.
# Snapshots are the exception: a snapshot is taken by its volume's node,
# and the plugin on another client refuses it.
#
# The clients' docker plugin must allow privileged containers and host
# paths:
#   plugin "docker" { config { allow_privileged = true  volumes { enabled = true } } }
#
# Image: there is no public ballast image. Build one with etcd support
# (deploy/kubernetes/README.md, "The image") on every client and tag it
# ballast:local; a :latest tag would make Nomad's docker driver pull it
# from a registry.
#
# Volumes are node-local: see volume.hcl for creating them.

# The etcd every client's ballast shares: etcd://HOST:PORT[,HOST:PORT...]
# (etcds:// for TLS), reachable from the plugin's container (not 127.0.0.1:
# that is the container's own). The one place to set it; no default, so a
# run without -var store=... (or a -var-file) stops here.
variable "store" {
  type        = string
  description = "etcd endpoints of the ballast cluster, etcd://HOST:PORT[,HOST:PORT...]"
}

job "ballast-csi" {
  type = "system"

  group "ballast" {
    task "plugin" {
      driver = "docker"

      config {
        image      = "ballast:local"
        command    = "ballast"
        args       = ["serve", "--csi-mode", "all", "--csi-endpoint", "unix:///csi/csi.sock", "--node-id", "${node.unique.name}", "--no-docker"]
        privileged = true

        # /dev: loop devices. /var/lib/ballast: the token and the pools'
        # image files. /run/ballast: sockets and the mounts that staging
        # binds, shared with the host so they outlive this container.
        volumes = [
          "/dev:/dev",
          "/var/lib/ballast:/var/lib/ballast",
          "/run/ballast:/run/ballast:rshared",
        ]
      }

      # `ballast serve` reads BALLAST_* as the flags of the same names.
      env {
        BALLAST_STORE = var.store
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
