# Builds the trusty box for the lab from the Ubuntu 14.04.6 server ISO: an unattended d-i install
# driven by http/trusty-preseed.cfg, then the lab's rendered provisioning scripts, then a Vagrant box.
#
#   packer build -only=qemu.trusty -var-file=vars.json packer/trusty.pkr.hcl
#   packer build -only=virtualbox-iso.trusty -var-file=vars.json packer/trusty.pkr.hcl
#
# vars.json must set "scripts" (paths of the rendered scripts, run in order as root).
# Written for Packer 1.6.6 (HCL2). Variables reach commands only through environment_vars.

variable "scripts" {
  type        = list(string)
  description = "Rendered provisioning scripts, run in order as root over SSH."
}

variable "iso_url" {
  type    = string
  default = "https://releases.ubuntu.com/14.04/ubuntu-14.04.6-server-amd64.iso"
}

variable "iso_checksum" {
  type        = string
  description = "sha256 of ubuntu-14.04.6-server-amd64.iso as published in releases.ubuntu.com/14.04/SHA256SUMS."
  default     = "sha256:b17d7c1e9d0321ad5810ba77b69aef43f0f29a5422b08120e6ee0576c4527c0e"
}

variable "qemu_accelerator" {
  type        = string
  description = "kvm where it works; tcg (software emulation) is the safe default."
  default     = "tcg"
}

variable "headless" {
  type    = bool
  default = true
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type        = number
  description = "MiB"
  default     = 1024
}

variable "disk_size" {
  type        = number
  description = "MiB"
  default     = 20480
}

variable "boot_wait" {
  type        = string
  description = "Time before typing the boot command; TCG needs longer than KVM."
  default     = "10s"
}

variable "http_directory" {
  type        = string
  description = "Directory served to the installer; empty means packer/http next to this file."
  default     = ""
}

variable "ssh_username" {
  type        = string
  description = "Must match passwd/username in the preseed."
  default     = "vagrant"
}

variable "ssh_password" {
  type        = string
  description = "Must match passwd/user-password in the preseed."
  default     = "vagrant"
}

variable "ssh_timeout" {
  type        = string
  description = "The whole unattended install happens before SSH answers."
  default     = "4h"
}

variable "ssh_port" {
  type        = number
  description = "Host port forwarded to the guest's sshd, on 127.0.0.1 only."
  default     = 2222
}

variable "vagrant_public_key" {
  type        = string
  description = "Key put in the vagrant user's authorized_keys; Vagrant's well-known insecure key by default (vagrant replaces it on first up)."
  default     = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key"
}

variable "vm_name" {
  type    = string
  default = "lab-trusty"
}

variable "output_directory" {
  type        = string
  description = "Build directory prefix; -virtualbox or -qemu is appended."
  default     = "output/trusty"
}

variable "output" {
  type        = string
  description = "The .box file; {{ .Provider }} becomes virtualbox or libvirt."
  default     = "output/trusty-{{ .Provider }}.box"
}

locals {
  http_directory = var.http_directory != "" ? var.http_directory : "${path.root}/http"

  # The 14.04 server ISO boots isolinux with gfxboot: <esc> leaves the language menu, <esc> asks to
  # leave the graphical menu, <enter> confirms, and the boot: prompt takes the kernel line.
  boot_command = [
    "<esc><wait>",
    "<esc><wait>",
    "<enter><wait>",
    "/install/vmlinuz",
    " auto=true priority=critical",
    " url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/trusty-preseed.cfg",
    " debian-installer/locale=en_US.UTF-8 console-setup/ask_detect=false",
    " keyboard-configuration/layoutcode=us kbd-chooser/method=us",
    " hostname=trusty domain=vm fb=false debconf/frontend=noninteractive",
    " initrd=/install/initrd.gz -- <enter>",
  ]

  # passwordless sudo comes from the preseed; no password is typed into a command
  shutdown_command = "sudo -n /sbin/shutdown -P now"
}

source "virtualbox-iso" "trusty" {
  guest_os_type        = "Ubuntu_64"
  iso_url              = var.iso_url
  iso_checksum         = var.iso_checksum
  headless             = var.headless
  cpus                 = var.cpus
  memory               = var.memory
  disk_size            = var.disk_size
  hard_drive_interface = "sata"
  guest_additions_mode = "disable"
  http_directory       = local.http_directory
  http_bind_address    = "127.0.0.1"
  boot_wait            = var.boot_wait
  boot_command         = local.boot_command
  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_password         = var.ssh_password
  ssh_timeout          = var.ssh_timeout
  ssh_host_port_min    = var.ssh_port
  ssh_host_port_max    = var.ssh_port
  shutdown_command     = local.shutdown_command
  vm_name              = var.vm_name
  output_directory     = "${var.output_directory}-virtualbox"
}

source "qemu" "trusty" {
  iso_url           = var.iso_url
  iso_checksum      = var.iso_checksum
  accelerator       = var.qemu_accelerator
  headless          = var.headless
  cpus              = var.cpus
  memory            = var.memory
  disk_size         = var.disk_size
  disk_interface    = "virtio"
  format            = "qcow2"
  http_directory    = local.http_directory
  http_bind_address = "127.0.0.1"
  boot_wait         = var.boot_wait
  boot_command      = local.boot_command
  communicator      = "ssh"
  ssh_username      = var.ssh_username
  ssh_password      = var.ssh_password
  ssh_timeout       = var.ssh_timeout
  # Packer's own hostfwd listens on every interface: forward on 127.0.0.1 only, at a pinned port
  qemuargs = [
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:${var.ssh_port}-:22"],
    ["-device", "virtio-net,netdev=user.0"],
  ]
  host_port_min    = var.ssh_port
  host_port_max    = var.ssh_port
  ssh_host         = "127.0.0.1"
  vnc_bind_address = "127.0.0.1"
  shutdown_command = local.shutdown_command
  vm_name          = "${var.vm_name}.qcow2"
  output_directory = "${var.output_directory}-qemu"
}

build {
  sources = ["source.virtualbox-iso.trusty", "source.qemu.trusty"]

  # Vagrant logs in with this key first (insert_key then replaces it); passed as an environment
  # variable so the key never becomes part of a command line.
  provisioner "shell" {
    environment_vars = ["VAGRANT_PUBLIC_KEY=${var.vagrant_public_key}"]
    inline = [
      "install -d -m 0700 \"$HOME/.ssh\"",
      "printf '%s\\n' \"$VAGRANT_PUBLIC_KEY\" > \"$HOME/.ssh/authorized_keys\"",
      "chmod 0600 \"$HOME/.ssh/authorized_keys\"",
      "echo \"authorized_keys of $(id -un): $(wc -l < \"$HOME/.ssh/authorized_keys\") key(s)\"",
    ]
  }

  provisioner "shell" {
    scripts         = var.scripts
    execute_command = "chmod +x {{ .Path }}; {{ .Vars }} sudo -n -E bash {{ .Path }}"
  }

  post-processor "vagrant" {
    output = var.output
  }
}
