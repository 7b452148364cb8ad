# Packer (HCL2, tested with 1.6.6): turn the mmdebstrap-made disk into a libvirt Vagrant box.
# The disk boots its kernel directly (no bootloader yet); the provisioning scripts install GRUB,
# so the box boots on its own under vagrant-libvirt. Every value comes in as a variable;
# lab/build.py writes them to a JSON var-file.

variable "disk_image" {
  type        = string
  description = "qcow2 disk made by mmdebstrap + mkfs.ext4 -d"
}
variable "kernel" {
  type = string
}
variable "initrd" {
  type = string
}
variable "cmdline" {
  type = string
}
variable "output_directory" {
  type = string
}
variable "box_output" {
  type = string
}
variable "ssh_private_key_file" {
  type        = string
  description = "Vagrant's insecure key; the box's vagrant user trusts it, Vagrant replaces it on first up"
}
variable "ssh_port" {
  type        = number
  description = "host port forwarded to the guest's sshd on 127.0.0.1 only"
}
variable "serial_log" {
  type = string
}
variable "scripts" {
  type = list(string)
}
variable "accelerator" {
  type    = string
  default = "tcg"
}
variable "cpus" {
  type    = number
  default = 2
}
variable "memory" {
  type    = number
  default = 1024
}
variable "timeout" {
  type    = string
  default = "15m"
}

source "qemu" "debian" {
  iso_url          = "file://${var.disk_image}"
  iso_checksum     = "none"
  disk_image       = true
  skip_resize_disk = true
  skip_compaction  = true
  format           = "qcow2"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  cpus             = var.cpus
  memory           = var.memory
  headless         = true
  vnc_bind_address = "127.0.0.1"
  output_directory = var.output_directory
  vm_name          = "box.qcow2"
  boot_wait        = "1s"
  qemuargs = [
    ["-kernel", var.kernel],
    ["-initrd", var.initrd],
    ["-append", var.cmdline],
    ["-serial", "file:${var.serial_log}"],
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:${var.ssh_port}-:22"],
    ["-device", "virtio-net,netdev=user.0"],
  ]
  host_port_min        = var.ssh_port
  host_port_max        = var.ssh_port
  communicator         = "ssh"
  ssh_host             = "127.0.0.1"
  ssh_username         = "vagrant"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = var.timeout
  shutdown_command     = "sudo systemctl poweroff"
  shutdown_timeout     = "5m"
}

build {
  sources = ["source.qemu.debian"]

  provisioner "shell" {
    scripts         = var.scripts
    execute_command = "sudo -n bash '{{ .Path }}'"
  }

  post-processor "vagrant" {
    output               = var.box_output
    compression_level    = 1
    keep_input_artifact  = false
  }
}
