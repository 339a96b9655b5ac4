# A ballast volume for Nomad: a 1 GiB xfs volume on client node1 or node2,
# node1 if it has room.
#
#   nomad volume create deploy/nomad/volume.hcl
#
# ballast volumes are node-local. Nomad may send CreateVolume to the plugin
# on any client (ballast-csi.nomad.hcl); ballast places the volume on one of
# the nodes topology_request requires, the preferred first, and answers with
# that node as the volume's topology, so Nomad places the jobs using it on
# that client. Without topology_request the volume goes to the node with
# the most room. The segment values are client names (node.unique.name),
# the plugin's node ids.
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

# StorageClass-style parameters: fs (ext4, xfs) and pool. Without pool the
# volume goes to the default pool of the node it is placed on; a named pool
# is on one node, so naming one places the volume there.
parameters {
  fs = "xfs"
}

topology_request {
  # One of these.
  required {
    topology {
      # An object rather than a block: the key is not an identifier.
      segments = {
        "topology.ballast/node" = "node1"
      }
    }
    topology {
      segments = {
        "topology.ballast/node" = "node2"
      }
    }
  }
  # This one first.
  preferred {
    topology {
      segments = {
        "topology.ballast/node" = "node1"
      }
    }
  }
}
