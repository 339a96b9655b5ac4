# A ballast volume for Nomad: a 1 GiB xfs volume on client "node1".
#
#   nomad volume create deploy/nomad/volume.hcl
#
# ballast volumes are node-local: the volume is made on the client named in
# topology_request, and jobs using it are placed there. Nomad sends
# CreateVolume to the plugin on any client, and ballast refuses one meant
# for another node; on more than one client, create the volume on its node
# and register it instead:
#
#   ballast volume create pgdata --size 1G --fs xfs      # on node1
#   nomad volume register deploy/nomad/volume.hcl        # with external_id set
#
# (for register: set external_id = "pgdata", drop capacity_*.)
id        = "pgdata"
name      = "pgdata"
type      = "csi"
plugin_id = "ballast"

capacity_min = "1GiB"
capacity_max = "1GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

mount_options {
  fs_type = "xfs"
}

# StorageClass-style parameters: pool and fs (ext4, xfs).
parameters {
  pool = "default"
  fs   = "xfs"
}

topology_request {
  required {
    topology {
      # An object rather than a block: the key is not an identifier.
      segments = {
        "topology.ballast/node" = "node1"
      }
    }
  }
}
