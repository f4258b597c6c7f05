// Package dockerroot reads what docker's devicemapper driver keeps about
// its thin devices under the daemon's data root, without the daemon:
//
//	devicemapper/metadata/<hash>            one JSON per thin device:
//	                                        device_id, size, transaction_id,
//	                                        initialized, deleted ("base" is
//	                                        the base device)
//	devicemapper/metadata/deviceset-metadata  next_device_id, base device UUID
//	devicemapper/metadata/transaction-metadata  open_transaction_id,
//	                                        device_hash, device_id
//	image/devicemapper/layerdb/sha256/<chain>/cache-id   an image layer's hash
//	image/devicemapper/layerdb/mounts/<container>/mount-id, init-id
//	image/devicemapper/imagedb/content/sha256/<image>    image config (diff ids)
//	image/devicemapper/repositories.json                  image names
//	containers/<id>/config.v2.json                        container names
//
// and compares those records with the devices a pool's metadata holds
// (Reconcile): orphan devices, devices docker lost, deleted devices still
// present, and what docker will do at start-up about the pool's
// transaction id (daemon/graphdriver/devmapper/deviceset.go,
// processPendingTransaction: when the open transaction id is above the
// pool's, docker deletes that transaction's device).
//
// PlanFixes turns those findings into what can be fixed in the records
// while docker is stopped (today only the transaction record, so that
// docker does not delete a device the pool holds), the orphans a drop
// from the pool metadata could remove, and the rest left with advice.
// Plan.Apply is the only code here that writes, and it backs up each
// record before replacing it atomically.
package dockerroot
